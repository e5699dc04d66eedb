"""The host side of a fleet: ``edgecls fleet status|watch|keygen|deploy|bench`` over an MQTT broker.

The device side is ``edgecls run --mqtt`` (:mod:`edge_app.link.mqtt`); both speak the contract in
:mod:`edge_app.runtime.broker` and :mod:`edge_app.runtime.signing`.
"""
