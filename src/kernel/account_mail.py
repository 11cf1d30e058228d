"""The mails more than one slice sends: the verification of an address, and the notice
that a password changed. Their templates are in kernel/mail_templates/."""

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.email_tokens import EmailTokens
from kernel.mail import KERNEL_TEMPLATES, queue_mail
from kernel.settings import Settings
from kernel.users import User

VERIFICATION_PAGE = "/account/verify-email"  # served by features/account_pages


def link(template: str, token: str, *, settings: Settings, page: str) -> str | None:
    """The mailed link: the configured template, else the service's own page, else none."""
    if template:
        return template.replace("{token}", token)
    base = settings.resolved_public_url
    return f"{base}{page}?token={token}" if base else None


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
            "token": secret.token,
            "code": secret.code,
            "link": link(
                settings.email_verification_url,
                secret.token,
                settings=settings,
                page=VERIFICATION_PAGE,
            ),
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
        context={},
    )
