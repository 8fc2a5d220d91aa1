"""The provider modules' HTTP cases run against a gateway with the default menus: the `ussd`
fixture (tests/ussd_support.py, one gateway per module) for every module here."""

from tests.ussd_support import ussd

__all__ = ["ussd"]
