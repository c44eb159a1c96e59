#!/usr/bin/env bash
# WordPress with nginx, PHP-FPM and MariaDB in a Debian 12 or Ubuntu 24.04 container.
#
# Run by the pvefleet installer as `pct exec VMID -- bash -s -- SITE_URL TITLE ADMIN_EMAIL
# ADMIN_USER`, with this script on stdin after two lines that export the secrets:
#   PVEFLEET_DB_PASSWORD     the database user's password (used only on the first run);
#   PVEFLEET_ADMIN_PASSWORD  the WordPress admin's password.
# Secrets never travel as arguments, which `ps` would show on the node and in the container.
#
# Safe to run again: packages are kept, an existing database password is read back from
# wp-config.php and reused, files are not downloaded twice, and `wp core install` runs only
# when WordPress is not installed yet. It stops at the first failure with a message saying
# which step failed.
#
# Everything is in main(), which bash reads whole before running it: the script arrives on stdin,
# and a command that read stdin must not eat the rest of it.
set -euo pipefail

main() {
step() { printf '==> %s\n' "$*"; }
fail() { printf 'wordpress-setup: %s\n' "$*" >&2; exit 1; }
trap 'fail "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR

[ "$#" -eq 4 ] || fail "usage: wordpress-setup.sh SITE_URL TITLE ADMIN_EMAIL ADMIN_USER (got $# arguments)"
site_url=$1
title=$2
admin_email=$3
admin_user=$4
[ -n "${PVEFLEET_ADMIN_PASSWORD:-}" ] || fail "PVEFLEET_ADMIN_PASSWORD is not set"
[ -n "${PVEFLEET_DB_PASSWORD:-}" ] || fail "PVEFLEET_DB_PASSWORD is not set"
[ "$(id -u)" -eq 0 ] || fail "must run as root inside the container"

export LC_ALL=C.UTF-8 LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
export PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The paths can be moved (the repository's tests run the script against stand-ins).
webroot=${PVEFLEET_WEBROOT:-/var/www/html}
nginx_dir=${PVEFLEET_NGINX_DIR:-/etc/nginx}
os_release=${PVEFLEET_OS_RELEASE:-/etc/os-release}
db_name=wordpress
db_user=wordpress

# shellcheck source=/dev/null
. "$os_release"
case "${ID}:${VERSION_ID}" in
  debian:12 | ubuntu:24.04) ;;
  *) fail "unsupported template ${PRETTY_NAME:-$ID $VERSION_ID}; Debian 12 and Ubuntu 24.04 are" ;;
esac

step "Installing nginx, PHP-FPM and MariaDB"
apt_get() { apt-get -o DPkg::Lock::Timeout=300 -y -q "$@"; }
apt_get update
apt_get install nginx mariadb-server php-fpm php-mysql php-curl php-gd php-intl php-mbstring \
  php-xml php-zip curl ca-certificates less

php_version=$(php -r 'echo PHP_MAJOR_VERSION.".".PHP_MINOR_VERSION;')
fpm_socket=/run/php/php${php_version}-fpm.sock
systemctl enable --now mariadb "php${php_version}-fpm" nginx

step "Installing wp-cli"
if ! command -v wp >/dev/null 2>&1; then
  curl -fsSL -o /usr/local/bin/wp https://raw.githubusercontent.com/wp-cli/builds/gh-pages/phar/wp-cli.phar
  chmod 0755 /usr/local/bin/wp
fi
wp() { command wp --path="$webroot" --allow-root "$@"; }

step "Database"
db_password=$PVEFLEET_DB_PASSWORD
if [ -f "$webroot/wp-config.php" ]; then
  # A re-run keeps the password the site already uses.
  db_password=$(wp config get DB_PASSWORD)
fi
mysql --protocol=socket -u root <<SQL
CREATE DATABASE IF NOT EXISTS \`${db_name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '${db_user}'@'localhost' IDENTIFIED BY '${db_password}';
ALTER USER '${db_user}'@'localhost' IDENTIFIED BY '${db_password}';
GRANT ALL PRIVILEGES ON \`${db_name}\`.* TO '${db_user}'@'localhost';
FLUSH PRIVILEGES;
SQL

step "WordPress files"
mkdir -p "$webroot"
if [ ! -f "$webroot/wp-includes/version.php" ]; then
  rm -f "$webroot/index.nginx-debian.html" "$webroot/index.html"
  wp core download
fi
if [ ! -f "$webroot/wp-config.php" ]; then
  # Passwords go on stdin (`--prompt`), never on a command line.
  printf '%s\n' "$db_password" | wp config create --dbname="$db_name" --dbuser="$db_user" --skip-check --prompt=dbpass
  # Behind a TLS-terminating proxy: honour X-Forwarded-Proto, or https sites redirect-loop.
  wp config set PVEFLEET_FORWARDED_PROTO "isset(\$_SERVER['HTTP_X_FORWARDED_PROTO']) && \$_SERVER['HTTP_X_FORWARDED_PROTO'] === 'https' && (\$_SERVER['HTTPS'] = 'on')" --raw
fi
chown -R www-data:www-data "$webroot"

step "nginx"
cat > "$nginx_dir/sites-available/wordpress" <<NGINX
server {
    listen 80 default_server;
    listen [::]:80 default_server;
    root ${webroot};
    index index.php;
    client_max_body_size 64m;
    location / { try_files \$uri \$uri/ /index.php?\$args; }
    location ~ \.php\$ {
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:${fpm_socket};
    }
}
NGINX
ln -sf "$nginx_dir/sites-available/wordpress" "$nginx_dir/sites-enabled/wordpress"
rm -f "$nginx_dir/sites-enabled/default"
nginx -t
systemctl reload nginx

step "WordPress install"
if ! wp core is-installed; then
  printf '%s\n' "$PVEFLEET_ADMIN_PASSWORD" | wp core install --url="$site_url" --title="$title" \
    --admin_user="$admin_user" --admin_email="$admin_email" --skip-email --prompt=admin_password
fi
wp core is-installed || fail "WordPress does not report itself installed"
step "Done: $site_url"
}

main "$@" </dev/null
