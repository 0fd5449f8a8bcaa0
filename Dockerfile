# The image of docker-compose.yml and examples/kubernetes/: pg_beat, Celery with Redis, and the
# example app. Build: docker build -t pg-beat-example .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# The package first, so that editing the examples does not re-run pip.
COPY pyproject.toml README.md ./
COPY pg_beat ./pg_beat
COPY migrations ./migrations
RUN pip install '.[redis]'

COPY examples ./examples

# celery beat and the worker need no privileges; pg_beat keeps no state on disk.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pgbeat
USER 10001

CMD ["celery", "-A", "examples.app", "beat", "-S", "pg_beat:Scheduler", "-l", "info"]
