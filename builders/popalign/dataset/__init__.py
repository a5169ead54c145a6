"""The build folder: its layout (written only in `folder`), the typed manifest, rows (spooled, read and written),
the `datasets` builder and schema, the quality report and the card."""
