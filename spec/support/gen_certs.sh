#!/bin/sh
# Generate the TLS test certificates for the fake Okta server into DIR:
#   ca.pem/ca-key.pem               test CA
#   server.pem/server-key.pem       signed by ca, SAN localhost, 127.0.0.1, ::1
#   wronghost.pem/wronghost-key.pem signed by ca, SAN wrong.invalid only
#   other-ca.pem/other-ca-key.pem   a second CA the clients don't trust
#   untrusted.pem/untrusted-key.pem signed by other-ca, SAN localhost, 127.0.0.1
# EC P-256 keys, valid for 7 days. Does nothing if DIR/ca.pem exists and
# DIR/server.pem is valid for at least another day.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
days=7

if [ -f "$dir/ca.pem" ] && [ -f "$dir/server.pem" ] &&
    openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.gen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
errlog=$tmp/openssl.log

# Run openssl quietly; on failure show what it said.
ossl() {
    if ! openssl "$@" >/dev/null 2>>"$errlog"; then
        echo "gen_certs.sh: openssl $1 failed:" >&2
        cat "$errlog" >&2
        exit 1
    fi
}

# new_ca NAME CN
new_ca() {
    ossl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$tmp/$1-key.pem" -out "$tmp/$1.pem" -days "$days" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# new_leaf NAME CA SAN
new_leaf() {
    ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$tmp/$1-key.pem" -out "$tmp/$1.csr" -subj "/CN=lusidauth test $1"
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid" \
        "subjectAltName=$3" >"$tmp/$1.ext"
    ossl x509 -req -in "$tmp/$1.csr" -CA "$tmp/$2.pem" -CAkey "$tmp/$2-key.pem" \
        -set_serial "0x$(openssl rand -hex 8)" -days "$days" \
        -extfile "$tmp/$1.ext" -out "$tmp/$1.pem"
}

new_ca ca "lusidauth test CA"
new_ca other-ca "lusidauth unknown CA"
new_leaf server ca "DNS:localhost,IP:127.0.0.1,IP:::1"
new_leaf wronghost ca "DNS:wrong.invalid"
new_leaf untrusted other-ca "DNS:localhost,IP:127.0.0.1"

# ca.pem last: its presence marks a complete set.
for f in other-ca other-ca-key server server-key wronghost wronghost-key \
    untrusted untrusted-key ca-key ca; do
    mv -f "$tmp/$f.pem" "$dir/$f.pem"
done
