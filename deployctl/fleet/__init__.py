"""Hosts: how a version is started, checked and stopped (transports run what deploy builds)."""
