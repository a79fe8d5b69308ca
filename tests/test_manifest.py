"""Dataset manifests: the shared/data CSV format, relative paths, DMS columns and clear errors on real files."""
from __future__ import annotations

import shutil

import pytest

from conftest import shared_path
from respi_edge.runtime.dms import dms_from_row
from respi_edge.runtime.errors import ManifestError
from respi_edge.runtime.manifest import manifest_sha256, read_manifest

A = "40138127_14.7_0_p3_139.flac"
B = "40638274_9.7_1_p2_1684.flac"


@pytest.fixture
def folder(tmp_path):
    """A manifest folder with two real SPRSound recordings under audio/."""
    (tmp_path / "audio").mkdir()
    for name in (A, B):
        shutil.copy(shared_path("data", "sprsound2022", "audio", name), tmp_path / "audio" / name)
    return tmp_path


def _csv(folder, text, name="m.csv"):
    p = folder / name
    p.write_text(text)
    return p


def test_the_shared_test_split_reads_with_its_dms():
    m = read_manifest(shared_path("data", "sprsound2022", "test_intra.csv"))
    assert len(m) == 324 and len(set(m.patients)) == 136 and sum(m.labels) == 118
    r = m.rows[0]
    assert r.rel == "audio/40638274_9.7_1_p1_1696.flac" and r.path.endswith(r.rel) and r.path.startswith("/")
    assert r.label == 1 and r.patient == "40638274" and r.dms == {"gender": "F", "age": "9.7", "location": "p1"}
    assert dms_from_row(r.dms) == "Gender: F. Age: 9.7. Record location: left posterior chest."


def test_relative_paths_resolve_against_the_manifest_folder_not_the_cwd(folder, tmp_path_factory, monkeypatch):
    p = _csv(folder, f"path,label,patient,gender,age,location,history,symptoms\n"
                     f"audio/{A},0,p1,M,,p3,,\naudio/{B},1,p2,F,9.7,,none,cough\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    m = read_manifest(p)
    assert [r.path for r in m.rows] == [str(folder / "audio" / A), str(folder / "audio" / B)]
    # empty DMS values are dropped, present ones kept as written
    assert m.rows[0].dms == {"gender": "M", "location": "p3"}
    assert m.rows[1].dms == {"gender": "F", "age": "9.7", "history": "none", "symptoms": "cough"}


def test_a_spreadsheet_bom_is_not_part_of_the_header(folder):
    p = folder / "bom.csv"
    p.write_bytes(f"\ufeffpath,label,patient\naudio/{A},0,p1\naudio/{B},1,p2\n".encode("utf-8"))
    assert len(read_manifest(p)) == 2


@pytest.mark.parametrize("text, match", [
    ("file,label\nx.flac,1\n", "missing column"),
    (f"path,label\naudio/{A},1\n", r"missing column\(s\) patient"),
    ("path,label,patient\naudio/nope.flac,1,p1\naudio/gone.flac,0,p2\n", "2 audio file.*not found.*nope.flac"),
    (f"path,label,patient\naudio/{A},yes,p1\naudio/{B},0,p2\n", ":2: label 'yes' is not an integer"),
    (f"path,label,patient\naudio/{A},1.0,p1\naudio/{B},0,p2\n", "not an integer"),
    (f"path,label,patient\naudio/{A},2,p1\naudio/{B},0,p2\n", "outside 0..1"),
    (f"path,label,patient\naudio/{A},0,p1\naudio/{B},-1,p2\n", ":3: label -1 outside"),
    (f"path,label,patient\naudio/{A},1,p1\naudio/{B},1,p2\n", "both classes"),
    (f"path,label,patient\naudio/{A},1,\naudio/{B},0,p2\n", "empty patient"),
    (f"path,label,patient\n,1,p1\n", "empty path"),
    ("path,label,patient\n", "no recordings"),
])
def test_malformed_manifests_name_the_problem(folder, text, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(_csv(folder, text))


def test_missing_manifest_and_non_utf8(folder):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(folder / "absent.csv")
    p = folder / "latin1.csv"
    p.write_bytes(b"path,label,patient\naudio/\xe9.flac,1,p1\n")
    with pytest.raises(ManifestError, match="UTF-8"):
        read_manifest(p)


def test_hash_follows_labels_and_audio_bytes(folder):
    p = _csv(folder, f"path,label,patient\naudio/{A},0,p1\naudio/{B},1,p2\n")
    h = manifest_sha256(p)
    assert h == read_manifest(p).manifest_sha256 == read_manifest(p).sha256()
    _csv(folder, f"path,label,patient\naudio/{A},1,p1\naudio/{B},0,p2\n", "swapped.csv")
    assert manifest_sha256(folder / "swapped.csv") != h
    data = bytearray((folder / "audio" / A).read_bytes())
    data[-1] ^= 1
    (folder / "audio" / A).write_bytes(bytes(data))
    assert manifest_sha256(p) != h
