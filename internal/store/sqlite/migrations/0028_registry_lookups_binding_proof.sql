-- The DCC registry's lookup by equipment without an issuer
-- (GET /api/v1/registry/equipment?value=…): the primary key
-- (issuer, value, dcc_id) cannot serve "value = ?" alone, which scanned
-- every identification (2,000,000 rows at 1,000,000 DCCs).
CREATE INDEX registry_equipment_value ON registry_equipment (value, dcc_id);

-- The fleet link's binding says how it is known (docs/dcc.md "The fleet
-- link"): empty, declared by who may publish the device's snapshots; else
-- what the platform verified (the gateway's enrollment). Bindings made
-- before are declared.
ALTER TABLE device_equipment ADD COLUMN proof TEXT NOT NULL DEFAULT '';
