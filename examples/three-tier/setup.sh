#!/bin/sh
# Seed 003's three-tier application with ctnet: web (frontend, published on port 8080) -> api
# (backend) -> db (database). Only the frontend reaches the internet; web never reaches db.
#
#   SERVE='python3 -m http.server --bind ::' ./setup.sh     # the server command gets the port appended
#   CTNET=ctnet CTNET_STATE_DIR=/var/lib/ctnet               # which ctnet, which state (defaults)
#
# `ctnet demo` runs this script in a lab of its own and prints the connectivity matrix.
set -eu
here=$(dirname "$0")
ctnet=${CTNET:-ctnet}
serve=${SERVE:-python3 -m http.server --bind ::}

$ctnet network create frontend --subnet 192.168.10.0/24
$ctnet network create backend --subnet 192.168.20.0/24 --internal     # no internet
$ctnet network create database --subnet 192.168.30.0/24 --internal    # no internet

# $serve is split into words on purpose: it is a command line.
# shellcheck disable=SC2086
$ctnet run -d --name web --network frontend --label tier=web -p 8080:80 -- $serve 80
# shellcheck disable=SC2086
$ctnet run -d --name api --network backend --label tier=api -- $serve 80
# shellcheck disable=SC2086
$ctnet run -d --name db --network database --label tier=db -- $serve 3306

$ctnet policy apply "$here/rules"
$ctnet policy ls
