# The sendguard worker image: `docker compose up` builds it for the `topics` and
# `worker` services. Build context: the repository root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and package first, so editing schemas or topics does not reinstall.
COPY pyproject.toml ./
COPY processor ./processor
RUN pip install .

# Run-time files read from disk, not from the installed package. Their loaders
# fall back to paths relative to their source files, which inside site-packages
# are not the repository, hence the explicit locations.
COPY schemas ./schemas
COPY topics.yaml ./
ENV SENDGUARD_SCHEMAS_DIR=/app/schemas \
    SENDGUARD_TOPICS_FILE=/app/topics.yaml
# No policy file ships with the repository, so the worker runs docs/policy.md's
# defaults; to change them, mount a policy file and pass it to the worker.

# An unprivileged user that owns /app: Faust keeps its local table store (RocksDB)
# under the working directory.
RUN useradd --system --uid 10001 --home-dir /app sendguard && chown -R sendguard /app
USER sendguard

ENV SENDGUARD_BOOTSTRAP=kafka:9092
# Faust's web server: /metrics and the status and support views.
EXPOSE 6066

CMD ["sendguard", "worker"]
