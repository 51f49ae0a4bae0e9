# gptomni-2api: the app only (Nginx runs in its own container, see docker-compose.yml).
# No secret is baked in: keys and cookies come from the environment (.env via Compose) at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WORKERS=1

WORKDIR /srv/gptomni-2api

# Dependencies first, pinned in requirements.txt, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# A user without a login or a home of interest; /data is where the credential pool's file lives
# (a named volume in Compose, which takes this directory's owner when first created).
RUN groupadd --system --gid 10001 gptomni \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gptomni \
    && mkdir /data \
    && chown 10001:10001 /data
VOLUME ["/data"]

COPY main.py .
COPY app ./app

# Numeric, so a runtime that checks runAsNonRoot can verify it without the image's /etc/passwd.
USER 10001:10001
EXPOSE 8000

# No curl in the slim image; Python is there anyway.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

# `python main.py` reads HOST, PORT, WORKERS, SHUTDOWN_GRACE_SECONDS from the environment (app/config.py)
# and, on SIGTERM, lets streams in flight finish before it exits.
CMD ["python", "main.py"]
