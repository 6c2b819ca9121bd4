-- The DCC registry's lookup by equipment without an issuer
-- (GET /api/v1/registry/equipment?value=…): the primary key
-- (issuer, value, dcc_id) cannot serve "value = ?" alone, which scanned
-- every identification (2,000,000 rows at 1,000,000 DCCs).
CREATE INDEX registry_equipment_value ON registry_equipment (value, dcc_id);
