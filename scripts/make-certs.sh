#!/bin/sh
# Makes a private CA and certificates signed by it, for trying TLS and for the
# tests: `sh scripts/make-certs.sh DIR` (default: ./certs).
#
#   ca.pem              the CA (give it to clients: curl --cacert DIR/ca.pem)
#   server.pem/.key     localhost, 127.0.0.1, ::1 (ECDSA P-256)
#   rsa.pem/.key        the same names, RSA 2048
#   other.pem/.key      other.test and *.other.test (for SNI)
#   client.pem/.key     a client certificate (CN=client), for --tls-client-ca DIR/ca.pem
#   expired.pem/.key    localhost, expired in 2021
#
# Then:
#   prefork-server --port 8443 --tls-cert DIR/server.pem --tls-key DIR/server.key
#   curl --cacert DIR/ca.pem https://localhost:8443/
set -eu
dir=${1:-certs}
mkdir -p "$dir"
cd "$dir"
days=825
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=prefork-server test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null

# sign NAME SUBJECT EXTENSIONS: NAME.pem from NAME.key, signed by the CA.
sign() {
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days $days \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
server_ext="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"

ec server.key
sign server "/CN=localhost" "$server_ext"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
sign rsa "/CN=localhost" "$server_ext"
ec other.key
sign other "/CN=other.test" "subjectAltName=DNS:other.test,DNS:*.other.test
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
ec client.key
sign client "/CN=client" "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"

# An expired one: `openssl ca` is the one command here that sets the dates.
ec expired.key
openssl req -new -key expired.key -subj "/CN=localhost" -out expired.csr 2>/dev/null
mkdir -p ca.db
: > ca.db/index.txt
cat > ca.db/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = ca.db/index.txt
new_certs_dir = ca.db
serial = ca.db/serial
default_md = sha256
policy = any
x509_extensions = ext
[any]
commonName = supplied
[ext]
subjectAltName = DNS:localhost
basicConstraints = CA:FALSE
CNF
echo 01 > ca.db/serial
openssl ca -batch -notext -config ca.db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
    -startdate 20200101000000Z -enddate 20210101000000Z -out expired.pem 2>/dev/null
rm -rf ca.db expired.csr ca.srl
echo "certificates in $(pwd)"
