"""The Label Studio adapter: client, polling, idempotent import with predictions,
label-config checks. The only package that imports ``label_studio_sdk`` (in ``client``
and ``adapter``); ``config``, ``query`` and ``resolve`` are pure."""
