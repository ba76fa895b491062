"""keyhealth: predicts when Service Bus namespaces encrypted with customer-managed keys would go Revoked."""

__version__ = "0.1.0"
