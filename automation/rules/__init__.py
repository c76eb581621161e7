"""The rule language: parse expressions (``parser``) and compile them to SQL (``compiler``)."""
