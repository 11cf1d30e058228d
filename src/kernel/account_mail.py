"""The mails more than one slice sends: the verification of an address, and the notice
that a password changed. Their templates are in kernel/mail_templates/."""

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.email_tokens import EmailTokens
from kernel.mail import KERNEL_TEMPLATES, queue_mail
from kernel.settings import Settings
from kernel.users import User


def link(template: str, token: str) -> str | None:
    return template.replace("{token}", token) if template else None


async def queue_verification(
    session: AsyncSession, *, tokens: EmailTokens, settings: Settings, user: User
) -> None:
    """A verification mail to the user's current address; earlier ones stop working."""
    secret = await tokens.issue(session, user, "email_verification")
    queue_mail(
        session,
        to=user.email,
        templates=KERNEL_TEMPLATES,
        kind="email_verification",
        user_id=user.id,
        context={
            "first_name": user.first_name,
            "token": secret.token,
            "code": secret.code,
            "link": link(settings.email_verification_url, secret.token),
            "hours": settings.email_verification_ttl_seconds // 3600,
        },
    )


def queue_password_changed(session: AsyncSession, user: User) -> None:
    queue_mail(
        session,
        to=user.email,
        templates=KERNEL_TEMPLATES,
        kind="password_changed",
        user_id=user.id,
        context={"first_name": user.first_name},
    )
