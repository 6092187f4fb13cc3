#!/bin/sh
# Validates every file of the example estate with --check, against certificates made for the
# purpose in a temporary directory (--check of a receiver reads its own certificate).
#   sh examples/estate/check.sh [path/to/opha-sidecar]
set -eu
bin=$(realpath "${1:-target/debug/opha-sidecar}")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here"/*.toml "$tmp"/
"$bin" certs init --dir "$tmp/ca" >/dev/null
issue() { "$bin" certs issue --ca "$tmp/ca" --out "$tmp/certs" "$@" >/dev/null; }
issue --peer poller-acme-1 --role poller --tenant 10
issue --peer poller-chi-1 --role poller --tenant 20 --tenant 21 --tenant 22
issue --peer primary-1 --role primary
issue --peer primary-2 --role primary
issue --peer mirror-chi-1 --role mirror --tenant 20 --tenant 21 --tenant 22
cp "$tmp/ca/ca.pem" "$tmp/certs/ca.pem"
# Absolute --config: relative paths in the files are taken relative to the file's directory.
for f in poller-acme-1 poller-chi-1 mirror-chi-1-poller; do
    "$bin" poller --config "$tmp/$f.toml" --check >/dev/null
    echo "$f.toml: ok"
done
for f in primary-1 primary-2; do
    "$bin" primary --config "$tmp/$f.toml" --check >/dev/null
    echo "$f.toml: ok"
done
"$bin" mirror --config "$tmp/mirror-chi-1.toml" --check >/dev/null
echo "mirror-chi-1.toml: ok"
