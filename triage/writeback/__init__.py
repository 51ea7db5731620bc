"""Results back in the PACS (IHE AI Results): DICOM SR (TID 1500) and key images, stored by STOW-RS through an
outbox written in the same transaction as the result. Codes and design: docs/dicom-sr.md."""
