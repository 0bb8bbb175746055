# Sourced by the scripts in this folder: makes sure the external programs the
# test suite starts privately are installed (Debian packages; needs root).

ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "the tests need redis-server: install Debian's package (apt-get install -y redis-server)" >&2
    return 1
  fi
  echo "installing redis-server (Debian package)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
}
