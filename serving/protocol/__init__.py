"""v2 wire formats: datatypes, the JSON/binary REST codec and the protobuf converters."""
