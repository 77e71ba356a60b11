"""The online ranking service: FastAPI app, served models, micro-batching.

    recsys serve --artifact runs/dlrm/artifact [--workers N] [--precision fp32|bf16|int8|int4]
    recsys serve --artifact runs/dlrm/artifact --retriever runs/mf/artifact   # two stages (services.retrieval)

In-process (tests, benchmarks)::

    from services.ranking.app import create_app
    from services.ranking.settings import ServeSettings
    app = create_app(ServeSettings(artifact=path, redis_url="redis://127.0.0.1:6379/0"))
    # run it with uvicorn.Server or fastapi.testclient.TestClient(app); app.state.service is the
    # RankingService once started (its .rank(...) returns the response bytes).

Modules: ``settings`` (ServeSettings), ``payloads`` (request/response models),
``features`` (records + context → Batch), ``served`` (artifact loading, quantised
tables, model slot), ``batcher`` (the model thread), ``service`` (the request pipeline),
``metrics``, ``middleware``, ``fastpath`` (the hot routes before FastAPI's routing), ``deps`` and
``routers/`` (the HTTP layer), ``app``, ``http`` (uvicorn's protocol with timeouts and limits),
``workers`` (workers end with ``recsys serve``), ``demo`` (the end of ``make demo``).
Nothing is imported here: ``recsys --help`` imports the settings without torch.
"""
