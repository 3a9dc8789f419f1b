#!/bin/sh
# Removes what setup.sh made.
set -u
ctnet=${CTNET:-ctnet}
$ctnet policy rm web-to-api api-to-db no-web-to-db
$ctnet rm web api db
$ctnet network rm frontend backend database
