#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or systemd running (`make deploy-check`):
#
# 1. deploy/docker-compose.yml: `docker compose config` (or Debian's `docker-compose config`) parses,
#    interpolates and validates it against the Compose schema, with and without the gpu profile;
#    neither contacts an engine.
# 2. deploy/systemd/*: `systemd-analyze verify` (unknown directives, bad values, ExecStart binaries
#    that do not exist). The units name the install root /opt/lookalike (a checkout with its .venv);
#    verify checks that the binaries exist, so the copies it verifies name this checkout instead:
#    the one substitution, /opt/lookalike -> this repository's root, made in a temporary folder.
#
# Needs: docker compose (docker-compose-plugin) or docker-compose, systemd-analyze (systemd), and
# .venv (make install). Exits non-zero on the first failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "deploy-check: neither 'docker compose' nor 'docker-compose' is installed" \
       "(apt-get install -y --no-install-recommends docker-compose)" >&2
  exit 1
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "deploy-check: systemd-analyze is missing (apt-get install -y systemd)" >&2
  exit 1
fi
for binary in .venv/bin/gunicorn .venv/bin/celery .venv/bin/python; do
  [ -x "$binary" ] || { echo "deploy-check: $binary is missing (make install)" >&2; exit 1; }
done

# The variables the compose file demands (${VAR:?...}), with placeholder values.
export SECRET_KEY="deploy-check-placeholder-secret-key-0123456789abcdef"
export MINIO_ROOT_PASSWORD="deploy-check-placeholder"
for profile in "" gpu; do
  args=(-f deploy/docker-compose.yml)
  [ -n "$profile" ] && args+=(--profile "$profile")
  "${COMPOSE[@]}" "${args[@]}" config -q
  echo "deploy-check: ${COMPOSE[*]} config: deploy/docker-compose.yml${profile:+ (profile $profile)} is valid"
done

units="$(mktemp -d)"
trap 'rm -rf "$units"' EXIT
for unit in deploy/systemd/*.service deploy/systemd/*.target; do
  sed "s#/opt/lookalike#$ROOT#g" "$unit" > "$units/$(basename "$unit")"
done
# verify prints its findings and exits non-zero on errors; warnings are findings too here.
output="$(cd "$units" && systemd-analyze verify --man=no ./*.service ./*.target 2>&1)" || {
  echo "$output" >&2
  exit 1
}
if [ -n "$output" ]; then
  echo "$output" >&2
  echo "deploy-check: systemd-analyze verify reported the above" >&2
  exit 1
fi
echo "deploy-check: systemd-analyze verify: $(ls deploy/systemd/*.service deploy/systemd/*.target | wc -l) units are valid"
