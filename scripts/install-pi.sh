#!/usr/bin/env bash
# Install or upgrade edgepoint on Raspberry Pi OS bookworm (arm64, armhf; amd64 works for
# tests). Idempotent: run it again with the same source and nothing changes; run it with
# a newer source and it upgrades, rolling back if the new version does not come up.
#
#   sudo scripts/install-pi.sh [--station-id ID] [--simulate] [--spi] [--uart] [--no-start]
#
# What it does, in order:
#   1. Debian packages (python3-venv ...), the I2C bus (and SPI/UART when the config's
#      [rfid] interface or --spi/--uart asks) via raspi-config or config.txt.
#   2. The `edgepoint` system user, in groups gpio, i2c, spi, dialout (made if missing);
#      the invoking sudo user joins group edgepoint (for `edgepoint status`).
#   3. A virtualenv per release under /opt/edgepoint/releases/<version>-<hash>;
#      /opt/edgepoint/current points at the running one. armhf adds the Pi's own wheel
#      index (piwheels) where PyPI has no wheel.
#   4. /etc/edgepoint/config.toml from systemd/config.toml on a first install only; an
#      upgrade never touches it and leaves the new template as config.toml.dist.
#   5. The udev rules (hardware/udev/) and the unit (systemd/edgepoint.service).
#   6. Upgrade: stop the daemon, back up databases, keys and clock.json into
#      /var/lib/edgepoint/upgrade-backups/, check the config with the new release, run
#      the migrations as the service user (`edgepoint migrate`), switch `current`, start
#      and wait for READY. Any failure: restore the backup, switch back, start the old one.
# Without a running systemd (a chroot, a container image build) it stops after step 6's
# migrations: nothing to start. The log is also kept in /var/log/edgepoint/install.log.
set -euo pipefail

PREFIX=/opt/edgepoint
ETC=/etc/edgepoint
STATE=/var/lib/edgepoint
LOGS=/var/log/edgepoint
USER_NAME=edgepoint
GROUPS_WANTED=(gpio i2c spi dialout)
UNIT=edgepoint.service
KEEP_BACKUPS=3
SETTLE_S=10   # after READY, the daemon must still be up this long to count as started
PIWHEELS=https://www.piwheels.org/simple

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
station_id=""
simulate=false
want_spi=false
want_uart=false
start=true

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --station-id) station_id=${2:?--station-id needs a value}; shift ;;
        --simulate) simulate=true ;;
        --spi) want_spi=true ;;
        --uart) want_uart=true ;;
        --no-start) start=false ;;
        --source) src=$(cd "${2:?--source needs a folder}" && pwd); shift ;;
        -h|--help) usage 0 ;;
        *) echo "install-pi.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

say() { echo "install-pi: $*"; }
die() { echo "install-pi: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run it as root (sudo $0)"
if [ ! -f "$src/pyproject.toml" ] || [ ! -f "$src/systemd/$UNIT" ]; then
    die "$src is not an edgepoint source tree"
fi

mkdir -p "$LOGS"
exec > >(tee -a "$LOGS/install.log") 2>&1
say "$(date -u +%FT%TZ): installing from $src"

# -- 0. where we are ---------------------------------------------------------------------
codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
arch=$(dpkg --print-architecture)
[ "$codename" = bookworm ] || say "WARNING: made for bookworm, this is $codename"
case "$arch" in
    arm64|armhf|amd64) ;;
    *) die "unsupported architecture $arch (arm64, armhf; amd64 for tests)" ;;
esac
systemd_running=false
[ -d /run/systemd/system ] && systemd_running=true

# -- 1. packages and buses ---------------------------------------------------------------
need=()
for pkg in python3 python3-venv ca-certificates; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "edgepoint needs Python 3.11+"

# The reader's bus from an existing config (an upgrade keeps the operator's choice).
if [ -f "$ETC/config.toml" ]; then
    interface=$(python3 - "$ETC/config.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f).get("rfid", {}).get("interface", "i2c"))
EOF
    ) || interface=i2c
    [ "$interface" = spi ] && want_spi=true
    [ "$interface" = uart ] && want_uart=true
fi

reboot_needed=false
boot_config=/boot/firmware/config.txt
[ -f "$boot_config" ] || boot_config=/boot/config.txt
ensure_line() {  # ensure_line FILE LINE: append LINE unless present (uncommented)
    grep -qxF "$2" "$1" 2>/dev/null || { echo "$2" >> "$1"; reboot_needed=true; }
}
enable_bus() {  # enable_bus i2c|spi|uart
    if command -v raspi-config >/dev/null 2>&1; then
        case "$1" in
            i2c) [ "$(raspi-config nonint get_i2c)" = 0 ] || { raspi-config nonint do_i2c 0; reboot_needed=true; } ;;
            spi) [ "$(raspi-config nonint get_spi)" = 0 ] || { raspi-config nonint do_spi 0; reboot_needed=true; } ;;
            # The UART for the PN532, the serial console off it.
            uart) raspi-config nonint do_serial_hw 0; raspi-config nonint do_serial_cons 1 ;;
        esac
    elif [ -f "$boot_config" ]; then
        case "$1" in
            i2c) ensure_line "$boot_config" "dtparam=i2c_arm=on" ;;
            spi) ensure_line "$boot_config" "dtparam=spi=on" ;;
            uart) ensure_line "$boot_config" "enable_uart=1" ;;
        esac
    else
        say "no raspi-config and no $boot_config: not a Pi? $1 left as it is"
        return 0
    fi
    say "$1 enabled"
}
enable_bus i2c
mkdir -p /etc/modules-load.d
echo i2c-dev > /etc/modules-load.d/edgepoint.conf
$want_spi && enable_bus spi
$want_uart && enable_bus uart

# -- 2. the service user ------------------------------------------------------------------
for g in "${GROUPS_WANTED[@]}"; do
    getent group "$g" >/dev/null || { groupadd --system "$g"; say "group $g created"; }
done
if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "edgepoint charge point" "$USER_NAME"
    say "user $USER_NAME created"
fi
usermod -a -G "$(IFS=,; echo "${GROUPS_WANTED[*]}")" "$USER_NAME"
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    usermod -a -G "$USER_NAME" "$SUDO_USER"   # `edgepoint status` reads the socket
fi
install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE" "$LOGS"
install -d -m 0750 -o root -g "$USER_NAME" "$ETC"

# -- 3. the release -------------------------------------------------------------------------
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$src/edgepoint/__init__.py")
[ -n "$version" ] || die "no __version__ in $src/edgepoint/__init__.py"
digest=$(cd "$src" && find edgepoint pyproject.toml systemd hardware/udev -type f \
    \( -name '*.py' -o -name '*.toml' -o -name '*.service' -o -name '*.rules' -o -name '*.json' \) \
    -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-10)
release="$PREFIX/releases/$version-$digest"
previous=$(readlink "$PREFIX/current" 2>/dev/null || true)

if [ ! -f "$release/.installed" ]; then
    say "building $release"
    rm -rf "$release"
    mkdir -p "$PREFIX/releases"
    python3 -m venv "$release"
    pip_args=(--disable-pip-version-check --no-cache-dir -q)
    # armhf: PyPI has no wheels for cryptography & co.; Raspberry Pi OS's own index has.
    [ "$arch" = armhf ] && pip_args+=(--extra-index-url "$PIWHEELS")
    "$release/bin/pip" install "${pip_args[@]}" --upgrade pip
    "$release/bin/pip" install "${pip_args[@]}" "$src"
    "$release/bin/edgepoint" --version >/dev/null || die "the new release does not run"
    touch "$release/.installed"
fi
install -m 0644 "$src/README.md" "$PREFIX/README.md"
new_version=$("$release/bin/edgepoint" --version)

# -- 4. configuration -------------------------------------------------------------------------
if [ ! -f "$ETC/config.toml" ]; then
    station_id=${station_id:-EP-$(hostname | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-45)}
    tmp=$(mktemp)
    sed -e "s/^id = \"EP-CHANGE-ME\"/id = \"$station_id\"/" "$src/systemd/config.toml" > "$tmp"
    if $simulate; then
        sed -i 's/^simulate = false/simulate = true/' "$tmp"
    fi
    install -m 0640 -o root -g "$USER_NAME" "$tmp" "$ETC/config.toml"
    rm -f "$tmp"
    say "$ETC/config.toml written (station $station_id$($simulate && echo ', simulated hardware'))"
else
    install -m 0640 -o root -g "$USER_NAME" "$src/systemd/config.toml" "$ETC/config.toml.dist"
    say "$ETC/config.toml kept; the new template is $ETC/config.toml.dist"
fi
# The new release must accept the config before anything is switched.
runuser -u "$USER_NAME" -- "$release/bin/python" -c \
    'import sys; from pathlib import Path; from edgepoint.config import load_config; load_config(Path(sys.argv[1]))' \
    "$ETC/config.toml" || die "$ETC/config.toml is not valid for $new_version (see above); nothing changed"

# -- 5. udev rules and the unit ---------------------------------------------------------------
install -d -m 0755 /etc/udev/rules.d /etc/systemd/system
install -m 0644 "$src"/hardware/udev/*.rules /etc/udev/rules.d/
if command -v udevadm >/dev/null 2>&1 && [ -S /run/udev/control ]; then
    if udevadm control --reload; then
        udevadm trigger --subsystem-match=tty --subsystem-match=i2c-dev \
            --subsystem-match=spidev --subsystem-match=gpio || true
    fi
fi
install -m 0644 "$src/systemd/$UNIT" "/etc/systemd/system/$UNIT"
$systemd_running && systemctl daemon-reload

# -- 6. switch, with a way back ------------------------------------------------------------------
backup=""
restore() {
    [ -n "$backup" ] || return 0
    say "restoring databases and keys from $backup"
    rm -f "$STATE"/edgepoint.db* "$STATE"/csms.db*
    cp -a "$backup"/. "$STATE"/
}
point_current() {
    ln -sfn "$1" "$PREFIX/current.new"
    mv -T "$PREFIX/current.new" "$PREFIX/current"
}
started() {  # the unit became READY and is still up a little later
    systemctl start "$UNIT" || return 1
    sleep "$SETTLE_S"
    systemctl is-active --quiet "$UNIT"
}
rollback() {
    say "ROLLBACK: $1"
    if $systemd_running; then systemctl stop "$UNIT" || true; fi
    restore
    [ "$release" != "$previous" ] && rm -rf "$release"   # rebuilt if tried again
    if [ -n "$previous" ] && [ -d "$previous" ]; then
        point_current "$previous"
        say "back on $("$previous/bin/edgepoint" --version)"
        $systemd_running && $start && { systemctl start "$UNIT" || say "the old release does not start either"; }
    else
        rm -f "$PREFIX/current"
    fi
    die "upgrade to $new_version failed: $1"
}

if [ "$previous" != "$release" ]; then
    if $systemd_running && systemctl is-active --quiet "$UNIT"; then
        say "stopping $UNIT"
        systemctl stop "$UNIT"
    fi
    if compgen -G "$STATE/*.db" >/dev/null || [ -d "$STATE/secrets" ]; then
        from=$( [ -n "$previous" ] && basename "$previous" || echo unknown)
        backup="$STATE/upgrade-backups/$(date -u +%Y%m%dT%H%M%SZ)-from-$from"
        install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE/upgrade-backups" "$backup"
        for f in "$STATE"/edgepoint.db* "$STATE"/csms.db* "$STATE"/clock.json; do
            [ -e "$f" ] && cp -a "$f" "$backup"/
        done
        [ -d "$STATE/secrets" ] && cp -a "$STATE/secrets" "$backup"/
        say "databases and keys backed up to $backup"
        # Keep the newest few.
        find "$STATE/upgrade-backups" -mindepth 1 -maxdepth 1 -type d | sort -r |
            tail -n +$((KEEP_BACKUPS + 1)) | xargs -r rm -rf
    fi
    say "migrating the databases with $new_version"
    runuser -u "$USER_NAME" -- "$release/bin/edgepoint" migrate --config "$ETC/config.toml" ||
        rollback "the migrations failed"
    point_current "$release"
    say "current -> $release"
fi

if $systemd_running; then
    systemctl enable --quiet "$UNIT"
    if $start; then
        if [ "$previous" != "$release" ] || ! systemctl is-active --quiet "$UNIT"; then
            say "starting $UNIT (waits for READY)"
            started || rollback "$UNIT did not come up: journalctl -u $UNIT -b"
        fi
        say "$UNIT is running"
    fi
else
    say "systemd is not running here: $UNIT installed, not started"
fi

# Keep the current release and the one before it (for a manual rollback).
for dir in "$PREFIX"/releases/*; do
    [ -d "$dir" ] || continue
    case "$dir" in "$release"|"$previous") ;; *) rm -rf "$dir"; say "removed old release $dir" ;; esac
done

say "done: $new_version"
$reboot_needed && say "the boot configuration changed (buses): reboot to apply it"
exit 0
