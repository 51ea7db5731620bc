"""The core: models, audit, exceptions, validators, services and selectors that every layer may use."""
