# A small image that runs `ingest serve` as a non-root user.
# With no INGEST_DATABASE_URL it runs the embedded Postgres under /data (mount a volume there);
# in production point INGEST_DATABASE_URL at a managed Postgres 14+, INGEST_GEOIP_DB at a
# current GeoLite2/GeoIP2 City database, and give INGEST_MASTER_KEY (or INGEST_MASTER_KEY_FILE)
# from your secret store. The embedded default keeps its master key in /data/master.key.

# The wheel, with the parser compiled by mypyc (hatch_build.py): the full image has the C
# compiler the slim one lacks.
FROM python:3.11 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md hatch_build.py ./
COPY ingest ./ingest
COPY sql ./sql
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 ingest \
    && mkdir /data && chown ingest:ingest /data

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

USER ingest
ENV INGEST_HOST=0.0.0.0 \
    INGEST_PORT=8000 \
    INGEST_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["ingest", "serve"]
