# One image for web and worker; docker-compose.yml chooses the command.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production

WORKDIR /app
COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/production.txt

COPY . .
# collectstatic needs settings but no secrets of consequence.
RUN DJANGO_SECRET_KEY=build DJANGO_ALLOWED_HOSTS=localhost REDIS_URL=redis://redis:6379/0 \
    python manage.py collectstatic --noinput

RUN useradd --create-home app
USER app
EXPOSE 8000
# daphne with a graceful stop: SIGTERM closes WebSockets with 1001.
CMD ["python", "-m", "realtime.server", "-b", "0.0.0.0", "-p", "8000",
     "--ping-interval", "45", "--ping-timeout", "60", "config.asgi:application"]
