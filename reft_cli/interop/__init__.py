"""Other formats: pyreft export and import, model-hub folders and cards."""
