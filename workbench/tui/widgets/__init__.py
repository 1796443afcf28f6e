"""The workbench's widgets: chat turns, the prompt box, the sidebar's live panes."""

from .chat import AssistantTurn, UserTurn
from .chat_view import ChatView
from .meters import Gauge, MemoryPane, ModelPane, ThroughputPane
from .prompt import PromptBox
from .sidebar import Sidebar
from .status import Banner, StatusLine

__all__ = [
    "AssistantTurn", "Banner", "ChatView", "Gauge", "MemoryPane", "ModelPane", "PromptBox",
    "Sidebar", "StatusLine", "ThroughputPane", "UserTurn",
]
