#!/usr/bin/env bash
# Runs `cargo deny check` offline against deny.toml (see ARCHITECTURE.md, "Fuzzing and
# dependency audit"). The advisories come from the subset that
# deny/update-advisories.sh writes, found in $REGIONKV_ADVISORY_DB, else in
# ../shared/advisory-db beside the repository: this script turns it into the git
# repository cargo-deny opens (under target/deny/, where deny.toml's db-path points).
# Without a subset, only bans, licenses and sources are checked, and it says so.
set -euo pipefail
cd "$(dirname "$0")/.."
subset="${REGIONKV_ADVISORY_DB:-$PWD/../shared/advisory-db}"
# cargo-deny's directory for the default database: its name and a hash of its address.
db="target/deny/advisory-dbs/advisory-db-3157b0e258782691"

if [[ -f "$subset/SNAPSHOT" ]]; then
    rm -rf "$db"
    mkdir -p "$db"
    cp -r "$subset"/. "$db"/
    git -C "$db" init -q
    git -C "$db" add -A
    git -C "$db" -c user.name=regionkv -c user.email=ci@localhost -c commit.gpgsign=false \
        commit -q -m "RustSec advisories for regionkv's crates"
    echo "deny: advisories from $(tr '\n' ' ' < "$subset/SNAPSHOT")"
    cargo deny --offline check
else
    echo "deny: no advisory subset at $subset (deny/update-advisories.sh writes one):" \
        "checking bans, licenses and sources only"
    cargo deny --offline check bans licenses sources
fi
