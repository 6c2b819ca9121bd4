#!/usr/bin/env bash
# Installs the system packages the test suite talks to as real peers:
# OpenSSL (chain, CRL and CMS interop), Mosquitto (broker interop and
# benchmark), PostgreSQL (the store's second implementation; see
# scripts/postgres-test.sh), stunnel and Python 3 (the Paho MQTT suites).
# Only what is missing is installed; nothing runs if all is there.
set -euo pipefail

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v curl >/dev/null || need+=(curl)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The Eclipse Paho MQTT interoperability suites (run from ../shared/interop)
# are Python 3 and speak plain TCP: stunnel carries them over mutual TLS.
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
command -v python3 >/dev/null || need+=(python3)
# The official MindConnect agent SDK (Node.js) is internal/agent's real peer.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# DCC (internal/dcc): libxml2 validates the DCC schemas through cgo (headers
# and pkg-config to build), xmllint and xmlsec1 are the independent C14N and
# XML-signature peers of the tests.
pkg-config --exists libxml-2.0 2>/dev/null || need+=(libxml2-dev pkg-config)
command -v xmllint >/dev/null || need+=(libxml2-utils)
command -v xmlsec1 >/dev/null || need+=(xmlsec1)

sdk() { "$(dirname "$0")/mindconnect-sdk.sh" >/dev/null; }
if [ ${#need[@]} -eq 0 ]; then
  sdk
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
sdk
