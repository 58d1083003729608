#!/bin/sh
# Copies the bundle SRC/current points to into DST and re-points DST/current at the copy; with EVERY, keeps doing so.
#
#   sync-bundles.sh SRC DST            # once (an init container: the server then starts on DST/current)
#   sync-bundles.sh SRC DST 5          # every 5 s (a sidecar: `vitrine serve --bundle DST/current --watch 5` follows)
#
# Why a copy: SQLite (the docstore) and Tantivy (BM25) take lock files in the bundle directory even to read, so a
# server cannot open a bundle on a read-only volume (tested: "attempt to write a readonly database", "Failed to
# acquire Lockfile"); and SQLite's WAL mode is not safe on a network file system shared by several machines. The
# copy lives on pod-local disk, which also keeps Tantivy's mmap'd segments off the network. DST keeps the bundle it
# serves and the one before (the server retires the old one a minute after a swap; open files outlive deletion).
set -eu

src=${1:?usage: sync-bundles.sh SRC DST [EVERY_SECONDS]}
dst=${2:?usage: sync-bundles.sh SRC DST [EVERY_SECONDS]}
every=${3:-}

log() {
    printf '{"ts": "%s", "logger": "sync-bundles", "msg": "%s"}\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" >&2
}

sync_once() {
    target=$(readlink -f "$src/current") || { log "$src/current does not resolve"; return 1; }
    if [ ! -f "$target/manifest.json" ]; then
        log "$src/current -> $target is not a Vitrine bundle (no manifest.json)"
        return 1
    fi
    name=$(basename "$target")
    if [ ! -d "$dst/$name" ]; then
        # Copy beside, then rename: the server never sees half a bundle (the indexer's own rule).
        rm -rf "$dst/.$name.tmp"
        cp -R "$target" "$dst/.$name.tmp"
        chmod -R u+w "$dst/.$name.tmp"
        mv -T "$dst/.$name.tmp" "$dst/$name"
        log "copied bundle $name"
    fi
    previous=$(readlink "$dst/current" 2>/dev/null || true)
    if [ "$previous" != "$name" ]; then
        ln -sfn "$name" "$dst/.current.tmp"
        mv -T "$dst/.current.tmp" "$dst/current"  # rename(2): atomic, as `vitrine retrain` re-points
        log "current -> $name"
        for dir in "$dst"/*/; do
            old=$(basename "$dir")
            if [ ! -L "$dst/$old" ] && [ "$old" != "$name" ] && [ "$old" != "$previous" ]; then
                rm -rf "${dst:?}/$old"
                log "removed bundle $old"
            fi
        done
    fi
}

mkdir -p "$dst"
if [ -z "$every" ]; then
    sync_once
    exit 0
fi
while true; do
    # A failed copy (the source re-pointed mid-copy, a full disk) is retried; the served bundle stays as it is.
    sync_once || log "sync failed; serving the previous bundle, retrying in ${every} s"
    sleep "$every"
done
