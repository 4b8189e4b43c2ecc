# The image for docker-compose.yml's worker and demo services.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY celery_claim ./celery_claim
COPY examples ./examples
RUN pip install --no-cache-dir -e .
# Celery refuses to run as root by default; the demo's workers too.
RUN useradd --create-home app
USER app
ENV PYTHONUNBUFFERED=1
CMD ["celery-claim", "demo"]
