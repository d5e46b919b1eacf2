"""Integrations with other training frameworks (optional extras; nothing imported here)."""
