"""Enrichers: turn raw request fields into device, geo and client-IP facts (recorder thread only)."""  # noqa: E501
