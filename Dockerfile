# The app's image for compose.yaml (docs/deploy.md). Not built on this project's own machines:
# they reach no container registry.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DEBUG=true python manage.py collectstatic --noinput --verbosity 0
RUN useradd --system --home /app chat && mkdir -p /var/lib/chat && chown chat /var/lib/chat
USER chat
EXPOSE 8000
CMD ["python", "-m", "daphne", "-b", "0.0.0.0", "-p", "8000", "chatproject.asgi:application"]
