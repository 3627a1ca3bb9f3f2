# The one image of every Rassylka process: `rassylka api`, `rassylka worker`, `rassylka db
# upgrade` (and `rassylka bounces`) differ only by their command. See docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && rm -rf /build \
    && useradd --system --create-home --home-dir /var/lib/rassylka rassylka

# The working directory of an unprivileged user; on PostgreSQL nothing is kept in it.
USER rassylka
WORKDIR /var/lib/rassylka
EXPOSE 8000
CMD ["rassylka", "api", "--host", "0.0.0.0", "--port", "8000"]
