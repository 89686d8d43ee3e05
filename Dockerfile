# A small image that runs `ingest serve` as a non-root user.
# With no INGEST_DATABASE_URL it runs the embedded Postgres under /data (mount a volume there);
# in production point INGEST_DATABASE_URL at a managed Postgres 14+, INGEST_GEOIP_DB at a
# current GeoLite2/GeoIP2 City database, and give INGEST_MASTER_KEY (or INGEST_MASTER_KEY_FILE)
# from your secret store. The embedded default keeps its master key in /data/master.key.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 ingest \
    && mkdir /data && chown ingest:ingest /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY sql ./sql
RUN pip install . && rm -rf /app/ingest /app/sql

USER ingest
ENV INGEST_HOST=0.0.0.0 \
    INGEST_PORT=8000 \
    INGEST_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["ingest", "serve"]
