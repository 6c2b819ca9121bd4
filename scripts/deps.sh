#!/usr/bin/env bash
# Installs the system packages the test suite talks to as real peers:
# OpenSSL (chain, CRL and CMS interop), Mosquitto (broker interop and
# benchmark) and PostgreSQL (the store's second implementation; see
# scripts/postgres-test.sh). Only what is missing is installed; nothing runs
# if all is there.
set -euo pipefail

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v curl >/dev/null || need+=(curl)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "deps: installing ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install ${need[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
