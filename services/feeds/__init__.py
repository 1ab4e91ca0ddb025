"""ICB system-pressure feed: pull (JSON, FHIR MeasureReport, EDXL-HAVE, CSV) and signed push webhooks."""
