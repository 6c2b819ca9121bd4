-- The DCC fleet link (docs/dcc.md): which instrument a measurement device
-- is, from a measurement time on, as an equipment identification (issuer +
-- value, as DCCs name items in items/item/identifications). An empty value
-- says the device is no registered instrument from since_ms on.
CREATE TABLE device_equipment (
    gateway  TEXT    NOT NULL,   -- identity path of the device's gateway
    device   TEXT    NOT NULL,   -- the device id behind the gateway
    since_ms INTEGER NOT NULL,   -- measurement time (Unix ms) from which it holds
    issuer   TEXT    NOT NULL,   -- manufacturer, calibrationLaboratory, customer, owner, other
    value    TEXT    NOT NULL,
    set_by   TEXT    NOT NULL,   -- the identity that declared it
    set_at   INTEGER NOT NULL,   -- Unix ms
    PRIMARY KEY (gateway, device, since_ms)
) WITHOUT ROWID;
