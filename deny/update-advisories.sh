#!/usr/bin/env bash
# Writes the part of the RustSec advisory database that concerns this repository's
# crates: the `crates/<name>/` directories (and nothing else) for every package name in
# Cargo.lock and fuzz/Cargo.lock, in the database's own layout, plus SNAPSHOT (the
# commit they came from). cargo-deny reads it through deny/check.sh, offline.
#
#   deny/update-advisories.sh SOURCE [DEST]
#
# SOURCE: a checkout of the advisory database (a work tree or a bare git directory;
# its HEAD is read). DEST (default: $REGIONKV_ADVISORY_DB, else ../shared/advisory-db
# beside the repository): where the subset goes; it is replaced.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:?usage: deny/update-advisories.sh SOURCE [DEST]}"
dest="${2:-${REGIONKV_ADVISORY_DB:-$root/../shared/advisory-db}}"

if git -C "$src" rev-parse --is-bare-repository 2>/dev/null | grep -q true; then
    gitdir=(--git-dir="$src")
else
    gitdir=(-C "$src")
fi
commit="$(git "${gitdir[@]}" rev-parse HEAD)"
date="$(git "${gitdir[@]}" show -s --format=%cI HEAD)"

locks=("$root/Cargo.lock")
[[ -f "$root/fuzz/Cargo.lock" ]] && locks+=("$root/fuzz/Cargo.lock")
names="$(sed -n 's/^name = "\(.*\)"$/\1/p' "${locks[@]}" | sort -u)"
paths=()
for name in $names; do
    if git "${gitdir[@]}" cat-file -e "HEAD:crates/$name" 2>/dev/null; then
        paths+=("crates/$name")
    fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ((${#paths[@]})); then
    git "${gitdir[@]}" archive --format=tar HEAD -- "${paths[@]}" | tar -x -C "$tmp"
fi
mkdir -p "$tmp/crates"
printf 'commit %s\ndate %s\ncrates %s\n' "$commit" "$date" "${#paths[@]}" > "$tmp/SNAPSHOT"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$tmp" "$dest"
chmod -R a+rX "$dest"
echo "advisories of ${#paths[@]} crates from $commit ($date) in $dest"
