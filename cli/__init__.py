"""The escapestat command line: parses arguments, calls the library, prints."""
