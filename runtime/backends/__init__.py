"""Inference engines behind one interface: tokenize / embed_audio / prefix / score / forward."""
