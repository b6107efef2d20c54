"""The local stack: emulators, the dev runner and the local CARTO job API. Never deployed."""
