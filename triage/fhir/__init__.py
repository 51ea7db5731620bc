"""FHIR: advisory DiagnosticReport resources, the EMR client and the durable outbox that delivers them."""
