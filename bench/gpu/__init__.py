"""The prepared GPU run (issue 16): correctness of the CUDA paths on the tiny golden RespLLM, per-stage latency of
RespLLM's real LLM shape (Llama-3-8B) at 4/8/16 bits with measured roofline floors, and a projection to consumer
GPUs, in one call (`bench/gpu/run.sh`, see README.md there). `--device cpu --dry-run` runs the same code here."""
