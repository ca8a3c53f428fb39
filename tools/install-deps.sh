#!/usr/bin/env bash
# Installs the Debian packages that building, running or testing Warren needs.
# Usage: tools/install-deps.sh build|test|bench
# Missing packages are installed with apt-get when run as root; otherwise the
# exact command is printed and the script fails, so make stops with a clear reason.
set -euo pipefail

build_pkgs=(gcc make pkg-config libevent-dev libsqlite3-dev python3)
test_pkgs=(libcmocka-dev librabbitmq-dev python3-pika python3-pytest amqp-tools)
bench_pkgs=(librabbitmq-dev rabbitmq-server)

want=("${build_pkgs[@]}")
case "${1:-build}" in
  build) ;;
  test) want+=("${test_pkgs[@]}") ;;
  bench) want+=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "warren: missing Debian packages: ${missing[*]}" >&2
  echo "warren: run as root: apt-get update && $cmd" >&2
  exit 1
fi
echo "warren: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || apt-get update
# rabbitmq-server's postinst may try to start the service; policy-rc.d stops that.
if [[ " ${missing[*]} " == *" rabbitmq-server "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$cmd
