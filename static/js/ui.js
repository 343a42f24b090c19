// Small page helpers used on every page (no dependencies).
// Copy buttons: <button data-copy-target="ID" hidden> copies the value of #ID. They are
// rendered hidden so pages without JavaScript only show the (selectable) text field.

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Fallback for non-secure contexts (plain http on a LAN address).
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.style.position = 'fixed';
  area.style.opacity = '0';
  document.body.append(area);
  area.select();
  try {
    document.execCommand('copy');
  } finally {
    area.remove();
  }
}

for (const button of document.querySelectorAll('button[data-copy-target]')) {
  const target = document.getElementById(button.dataset.copyTarget);
  if (!target) continue;
  button.hidden = false;
  const label = button.textContent;
  button.addEventListener('click', async () => {
    try {
      await copyText(target.value ?? target.textContent);
      button.textContent = 'Copied';
    } catch {
      target.select?.();
      button.textContent = 'Press Ctrl+C';
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  // Selecting the whole field on focus makes manual copying easy too.
  target.addEventListener?.('focus', () => target.select?.());
}
