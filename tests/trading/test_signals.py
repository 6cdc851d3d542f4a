"""Signals: deterministic ids, validation, and the bridge from a master fill."""

from decimal import Decimal as D
import uuid

import pytest

from nija.trading.signals import Signal, cl_ord_id_for, signal_from_master_order, signal_id_for


def test_ids_are_deterministic_and_distinct():
    assert signal_id_for("OAAA-1", "T1") == signal_id_for("OAAA-1", "T1")
    assert signal_id_for("OAAA-1", "T1") != signal_id_for("OAAA-1", "T2")
    sid = signal_id_for("OAAA-1")
    assert cl_ord_id_for(sid, "alice") == cl_ord_id_for(sid, "Alice")
    assert cl_ord_id_for(sid, "alice") != cl_ord_id_for(sid, "bob")
    assert uuid.UUID(cl_ord_id_for(sid, "alice")).version == 5


@pytest.mark.parametrize("name", ["alice", "Ünïcode Zoë", "", "a|b", "x" * 300])
def test_ids_are_the_rfc4122_uuid5_that_stored_intents_were_given(name):
    # Intents stored by earlier runs are looked up by these ids: the derivation may never change.
    assert cl_ord_id_for("sig-1", name) == str(uuid.uuid5(uuid.UUID("0b9e5d7a-3c12-5e84-8f6d-4a1c2b3e5f60"),
                                                           f"sig-1|{name.lower()}"))
    assert signal_id_for("OAAA-1", name) == str(uuid.uuid5(uuid.UUID("6f1d2c1e-4b8a-5f0e-9a53-2c7e1d9b0a41"),
                                                            f"OAAA-1|{name}"))
    assert cl_ord_id_for("sig-1", "alice") == "3be303e1-1e39-54e8-ae1f-5a52d25f39bd"
    assert signal_id_for("OAAA-1", "T1") == "a08a8e36-977e-58b1-853b-a74843981f96"


def test_sell_needs_a_fraction():
    with pytest.raises(ValueError, match="position_fraction"):
        Signal("s", "O", "XBTUSD", "sell", D(1), D(1), D(0), D(1))
    with pytest.raises(TypeError, match="volume_base"):
        Signal("s", "O", "XBTUSD", "buy", 1.0, D(1), D(0), D(1))


def test_json_round_trip_keeps_decimals():
    signal = Signal("s", "O", "XBTUSD", "sell", D("0.1"), D("50000.5"), D("0.1"), D("1000"),
                    position_fraction=D("0.25"), reason="PROFIT_TAKING", filled_at_s=12.5)
    assert Signal.from_json(signal.to_json()) == signal


def test_bridge_from_master_sell_fill():
    signal = signal_from_master_order("OX", pair="XBTUSD", side="sell", vol_exec=D("0.025"), cost_usd=D("1250"),
                                      fee_usd=D("5"), master_equity_usd=D("1000"), position_before_base=D("0.1"),
                                      reason="PROFIT_TAKING")
    assert signal.position_fraction == D("0.25") and not signal.closes_position
    assert signal.avg_price_usd == D("50000")
    closing = signal_from_master_order("OY", pair="XBTUSD", side="sell", vol_exec=D("0.1"), cost_usd=D("5000"),
                                       fee_usd=D(0), master_equity_usd=D("1000"), position_before_base=D("0.1"))
    assert closing.closes_position and closing.sell_fraction == 1


def test_a_master_sell_that_leaves_only_dust_closes_the_position():
    # Balances have 10 decimals, lots 8: the master sold its whole lot and 4.2e-9 BTC stays behind, unsellable.
    leaves_dust = signal_from_master_order("OZ", pair="XBTUSD", side="sell", vol_exec=D("0.05"), cost_usd=D("2500"),
                                           fee_usd=D(0), master_equity_usd=D("1000"),
                                           position_before_base=D("0.0500000042"), ordermin_base=D("0.0001"))
    assert leaves_dust.closes_position and leaves_dust.sell_fraction == 1
    partial = signal_from_master_order("OW", pair="XBTUSD", side="sell", vol_exec=D("0.05"), cost_usd=D("2500"),
                                       fee_usd=D(0), master_equity_usd=D("1000"), position_before_base=D("0.0502"),
                                       ordermin_base=D("0.0001"))
    assert not partial.closes_position
