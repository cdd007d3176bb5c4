"""The MQTT bridge: the service's events out to a broker, commands in, Home Assistant discovery.

An optional process role (``mqtt``), started by the supervisor only when
``mqtt.host`` is set. Pure protocol logic lives in :mod:`.topics`,
:mod:`.commands`, :mod:`.homeassistant`, :mod:`.outbox` and :mod:`.state`;
the I/O (event bus, broker, the service's own WebSocket API) in :mod:`.api`
and :mod:`.bridge`. The topic tree is documented in the README
(section "MQTT").
"""
