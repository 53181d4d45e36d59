"""`mirasol serve`: a page and a JSON API to ask a trained run about videos (docs/serving.md).

    service.py       the work: check uploads, encode them once into the latent cache, answer
    sandbox.py       the probe and the decoding of uploads, in a limited worker process
    latent_cache.py  the on-disk LRU cache of chunk latents (safetensors, atomic writes)
    evidence.py      answers from latents, and the per-chunk evidence of an answer
    batcher.py       questions that arrive together answered in one batched decoder pass
    openai_api.py    the OpenAI-compatible chat endpoint (/v1/chat/completions, /v1/models)
    app.py           the FastAPI routes; page.py the page they serve

Needs the optional `serve` extra (fastapi, uvicorn, python-multipart); nothing else in the package
imports this one."""
