"""Every reply of SMS banking, in English, Kiswahili and French: the one catalogue.

`text(key, language, **values)` picks the customer's language (English when the language is not
in the catalogue) and fills `{placeholders}`. Error replies are keyed by the core's `error_code`
(`error_WRONG_PIN` ...), so a new core refusal falls back to `error_default` until it gets its
own line.

The grammar's one-line hints for malformed or unknown text (`hint_text`, used by
`channels.sms.commands`) are here too, in every language: what is wrong, then how the command
is written. The keywords stay as the parser reads them (BAL, SEND, ... are the same words in
every language); only the words between `<>` and the sentences around them are translated.
Every hint, and HELP, fits one GSM-7 SMS in every language (tests/channels/test_sms_commands.py
checks each).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from core import receipts

LANGUAGES = ("en", "sw", "fr")

_TEXTS: dict[str, dict[str, str]] = {
    "help": {
        "en": "BAL pin; SEND phone amount pin; MINI pin; PIN old new; LANG en/sw/fr; "
        "LOAN [product] amount pin; LOAN STATUS pin; REPAY amount pin; REG first last id pin",
        "sw": "Salio: BAL pin; Tuma: SEND simu kiasi pin; MINI pin; PIN ya_zamani mpya; "
        "LANG en/sw/fr; LOAN [msimbo] kiasi pin; LOAN STATUS pin; REPAY kiasi pin",
        "fr": "Solde: BAL pin; Envoi: SEND tel montant pin; MINI pin; PIN ancien nouveau; "
        "LANG en/sw/fr; LOAN [produit] montant pin; LOAN STATUS pin; REPAY montant pin",
    },
    # HELP from a number with no wallet: what it can do now (open one, pick a language).
    "help_unregistered": {
        "en": "Open a wallet: REG first last id pin, or just REG to be asked step by step. "
        "LANG en/sw/fr sets your language. Then HELP lists BAL, SEND, LOAN and more.",
        "sw": "Fungua pochi: REG jina1 jina2 kitambulisho pin, au REG pekee uulizwe hatua kwa "
        "hatua. LANG en/sw/fr kwa lugha. Kisha HELP itaonyesha BAL, SEND, LOAN na zaidi.",
        "fr": "Ouvrir un portefeuille: REG prénom nom id pin, ou REG seul, étape par étape. "
        "LANG en/sw/fr choisit la langue. Ensuite HELP liste BAL, SEND, LOAN, etc.",
    },
    "not_registered": {
        "en": "You are not registered. Send REG <first name> <last name> <ID number> <PIN> "
        "to open a wallet, or just REG to be asked step by step.",
        "sw": "Hujasajiliwa. Tuma REG <jina la kwanza> <jina la mwisho> <nambari ya kitambulisho> "
        "<PIN> kufungua pochi, au REG pekee uulizwe hatua kwa hatua.",
        "fr": "Ce numéro n'est pas inscrit. Envoyez REG <prénom> <nom> <numéro d'identité> "
        "<PIN> pour ouvrir un portefeuille, ou REG seul et nous vous guiderons.",
    },
    "registered": {
        "en": "Welcome {first_name}! Your wallet is open. Send BAL <PIN> for your balance.",
        "sw": "Karibu {first_name}! Pochi yako imefunguliwa. Tuma BAL <PIN> kuona salio.",
        "fr": "Bienvenue {first_name} ! Votre portefeuille est ouvert. Envoyez BAL <PIN> "
        "pour votre solde.",
    },
    "already_registered": {
        "en": "This number is already registered. Send HELP for the commands.",
        "sw": "Nambari hii imeshasajiliwa. Tuma HELP kuona amri.",
        "fr": "Ce numéro est déjà inscrit. Envoyez HELP pour les commandes.",
    },
    "balance": {
        "en": "Your balance is {balance}.",
        "sw": "Salio lako ni {balance}.",
        "fr": "Votre solde est de {balance}.",
    },
    # The reply to SEND is the sender's receipt (SMS banking queues no other): the same words
    # as the receipt the other channels' senders get.
    "sent": receipts.TEMPLATES["p2p_sent"],
    "confirm_send": {
        "en": "Send {amount} to {recipient_name} {recipient}? Fee {fee}, total {total}. "
        "Reply YES {code} within {minutes} minutes.",
        "sw": "Tuma {amount} kwa {recipient_name} {recipient}? Ada {fee}, jumla {total}. "
        "Jibu YES {code} ndani ya dakika {minutes}.",
        "fr": "Envoyer {amount} à {recipient_name} {recipient} ? Frais {fee}, total {total}. "
        "Répondez YES {code} dans les {minutes} minutes.",
    },
    "no_pending": {
        "en": "No transfer is waiting for confirmation, or it has expired. "
        "Send SEND <phone> <amount> <PIN> again.",
        "sw": "Hakuna muamala unaosubiri uthibitisho, au muda wake umeisha. "
        "Tuma SEND <simu> <kiasi> <PIN> tena.",
        "fr": "Aucun transfert n'attend de confirmation, ou il a expiré. "
        "Envoyez de nouveau SEND <tel> <montant> <PIN>.",
    },
    "wrong_code": {
        "en": "That code is not right. Reply YES with the code from our last SMS.",
        "sw": "Nambari hiyo si sahihi. Jibu YES na nambari kutoka SMS yetu ya mwisho.",
        "fr": "Ce code n'est pas le bon. Répondez YES avec le code de notre dernier SMS.",
    },
    "code_cancelled": {
        "en": "Too many wrong codes: the transfer is cancelled. Nothing was sent.",
        "sw": "Nambari zisizo sahihi mara nyingi: muamala umeghairiwa. Hakuna kilichotumwa.",
        "fr": "Trop de codes erronés : le transfert est annulé. Rien n'a été envoyé.",
    },
    "mini": {
        "en": "Balance {balance}. {lines}",
        "sw": "Salio {balance}. {lines}",
        "fr": "Solde {balance}. {lines}",
    },
    "mini_empty": {
        "en": "Balance {balance}. No transactions yet.",
        "sw": "Salio {balance}. Hakuna miamala bado.",
        "fr": "Solde {balance}. Aucune opération pour l'instant.",
    },
    "pin_changed": {
        "en": "Your PIN has been changed.",
        "sw": "PIN yako imebadilishwa.",
        "fr": "Votre PIN a été changé.",
    },
    "language_set": {
        "en": "You will now get messages in English.",
        "sw": "Sasa utapokea ujumbe kwa Kiswahili.",
        "fr": "Vous recevrez désormais les messages en francais.",
    },
    "loan_approved": {
        "en": "{reference} Loan of {amount} approved and sent to your wallet. "
        "Repay {total_due} by {due_date}.",
        "sw": "{reference} Mkopo wa {amount} umeidhinishwa na kutumwa kwenye pochi yako. "
        "Lipa {total_due} kabla ya {due_date}.",
        "fr": "{reference} Crédit de {amount} accordé et versé sur votre portefeuille. "
        "Remboursez {total_due} avant le {due_date}.",
    },
    "loan_review": {
        "en": "Your loan request {reference} for {amount} is being reviewed. "
        "The answer will come by SMS.",
        "sw": "Ombi lako la mkopo {reference} la {amount} linakaguliwa. Jibu litakuja kwa SMS.",
        "fr": "Votre demande de crédit {reference} de {amount} est en cours d'examen. "
        "La réponse arrivera par SMS.",
    },
    "no_loan_product": {
        "en": "No loan is offered at the moment.",
        "sw": "Hakuna mkopo unaotolewa kwa sasa.",
        "fr": "Aucun crédit n'est proposé pour le moment.",
    },
    "loan_range": {
        "en": "No loan for that amount. You can borrow {ranges}. Send LOAN <amount> <PIN>.",
        "sw": "Hakuna mkopo wa kiasi hicho. Unaweza kukopa {ranges}. Tuma LOAN <kiasi> <PIN>.",
        "fr": "Pas de crédit pour ce montant. Vous pouvez emprunter {ranges}. "
        "Envoyez LOAN <montant> <PIN>.",
    },
    "loan_range_span": {
        "en": "{low} to {high}",
        "sw": "kuanzia {low} hadi {high}",
        "fr": "de {low} à {high}",
    },
    "loan_range_or": {"en": "or", "sw": "au", "fr": "ou"},
    "loan_product_unknown": {
        "en": "There is no loan product {code}. Products: {codes}. Or send LOAN <amount> <PIN>.",
        "sw": "Hakuna mkopo wenye msimbo {code}. Iliyopo: {codes}. Au tuma LOAN <kiasi> <PIN>.",
        "fr": "Aucun crédit n'a le code {code}. Codes : {codes}. Ou envoyez LOAN <montant> <PIN>.",
    },
    "repaid": {
        "en": "{reference} {amount} paid to your loan. Still due {amount_due}. Balance {balance}.",
        "sw": "{reference} {amount} imelipwa kwa mkopo wako. Deni lililobaki {amount_due}. "
        "Salio {balance}.",
        "fr": "{reference} {amount} versé sur votre crédit. Reste à payer {amount_due}. "
        "Solde {balance}.",
    },
    "repaid_cleared": {
        "en": "{reference} {amount} paid. Your loan is fully repaid. Balance {balance}.",
        "sw": "{reference} {amount} imelipwa. Mkopo wako umelipwa wote. Salio {balance}.",
        "fr": "{reference} {amount} versé. Votre crédit est entièrement remboursé. "
        "Solde {balance}.",
    },
    "loan_status": {
        "en": "Your loan: {amount_due} due by {due_date}.",
        "sw": "Mkopo wako: {amount_due} kulipwa kabla ya {due_date}.",
        "fr": "Votre crédit : {amount_due} à rembourser avant le {due_date}.",
    },
    "no_loan": {
        "en": "You have no loan to repay.",
        "sw": "Huna mkopo wa kulipa.",
        "fr": "Vous n'avez aucun crédit à rembourser.",
    },
    "incomplete": {
        "en": "Part of your message did not arrive. Please send it again.",
        "sw": "Sehemu ya ujumbe wako haikufika. Tafadhali utume tena.",
        "fr": "Une partie de votre message n'est pas arrivée. Veuillez le renvoyer.",
    },
    "rate_limited": {
        "en": "Too many messages. Please wait a minute before sending another.",
        "sw": "Ujumbe mwingi mno. Tafadhali subiri dakika moja kabla ya kutuma mwingine.",
        "fr": "Trop de messages. Attendez une minute avant d'en envoyer un autre.",
    },
    "unavailable": {
        "en": "The service is temporarily unavailable. We will answer your message when "
        "it is back.",
        "sw": "Huduma haipatikani kwa sasa. Tutajibu ujumbe wako itakaporudi.",
        "fr": "Le service est temporairement indisponible. Nous répondrons à votre message "
        "dès son retour.",
    },
    # The registration dialog (channels.sms.registration): one question per SMS.
    "reg_ask_name": {
        "en": "Welcome! To open a wallet, send your first and last name, e.g. Amina Otieno. "
        "Send STOP to cancel. Kiswahili: LANG SW. FRANÇAIS: LANG FR",
        "sw": "Karibu! Kufungua pochi, tuma jina lako la kwanza na la mwisho, mfano Amina Otieno. "
        "Tuma STOP kusitisha.",
        "fr": "Bienvenue ! Pour ouvrir un portefeuille, envoyez votre prénom et votre nom, "
        "par ex. Amina Otieno. Envoyez STOP pour annuler.",
    },
    "reg_ask_id": {
        "en": "Thank you {first_name}. Now send your national ID number.",
        "sw": "Asante {first_name}. Sasa tuma nambari ya kitambulisho chako.",
        "fr": "Merci {first_name}. Envoyez maintenant votre numéro de pièce d'identité.",
    },
    "reg_ask_pin": {
        "en": "Now choose a 4-digit PIN and send it. Not a sequence like 1234, not one digit "
        "repeated. Delete your messages with the PIN afterwards.",
        "sw": "Sasa chagua PIN ya tarakimu 4 na uitume. Si mfuatano kama 1234, wala tarakimu "
        "moja inayojirudia. Futa ujumbe wenye PIN baadaye.",
        "fr": "Choisissez un PIN de 4 chiffres et envoyez-le. Ni une suite comme 1234, ni un "
        "chiffre répété. Effacez ensuite vos messages contenant le PIN.",
    },
    "reg_ask_confirm": {
        "en": "To confirm your PIN, send YES and the same PIN, like this: YES <PIN>",
        "sw": "Kuthibitisha PIN yako, tuma YES na PIN ileile, hivi: YES <PIN>",
        "fr": "Pour confirmer votre PIN, renvoyez-le précédé de YES, ainsi : YES <PIN>",
    },
    "reg_bad_name": {
        "en": "Please send two names, letters only, e.g. Amina Otieno. Send STOP to cancel.",
        "sw": "Tafadhali tuma majina mawili, herufi tu, mfano Amina Otieno. Tuma STOP kusitisha.",
        "fr": "Envoyez deux noms, en lettres seulement, par ex. Amina Otieno. "
        "Envoyez STOP pour annuler.",
    },
    "reg_bad_id": {
        "en": "The ID number must be 4 to 20 letters or digits, without spaces. "
        "Please send it again.",
        "sw": "Nambari ya kitambulisho iwe herufi au tarakimu 4 hadi 20, bila nafasi. "
        "Tafadhali itume tena.",
        "fr": "Le numéro d'identité doit avoir 4 à 20 lettres ou chiffres, sans espace. "
        "Renvoyez-le.",
    },
    "reg_bad_pin": {
        "en": "The PIN must be exactly 4 digits. Please choose a PIN and send it.",
        "sw": "PIN iwe tarakimu 4 hasa. Tafadhali chagua PIN na uitume.",
        "fr": "Le PIN doit avoir exactement 4 chiffres. Choisissez un PIN et envoyez-le.",
    },
    "reg_weak_pin": {
        "en": "That PIN is too easy to guess: not a sequence like 1234, not one digit repeated. "
        "Choose another PIN.",
        "sw": "PIN hiyo ni rahisi kukisia: si mfuatano kama 1234, wala tarakimu moja "
        "inayojirudia. Chagua PIN nyingine.",
        "fr": "Ce PIN est trop facile à deviner : ni une suite comme 1234, ni un chiffre "
        "répété. Choisissez un autre PIN.",
    },
    "reg_bad_confirm": {
        "en": "Please send YES followed by the same 4-digit PIN to confirm it: YES <PIN>",
        "sw": "Tafadhali tuma YES ikifuatwa na PIN ileile ya tarakimu 4 kuithibitisha: YES <PIN>",
        "fr": "Envoyez YES suivi du PIN de 4 chiffres choisi pour le confirmer : YES <PIN>",
    },
    "reg_mismatch": {
        "en": "The two PINs were different. Choose a PIN again and send it like this: PIN <PIN>",
        "sw": "PIN mbili hazikulingana. Chagua PIN tena na uitume hivi: PIN <PIN>",
        "fr": "Les deux PIN sont différents. Choisissez de nouveau un PIN et envoyez-le "
        "ainsi : PIN <PIN>",
    },
    "reg_too_many": {
        "en": "Too many wrong answers: registration cancelled. Send REG to start again.",
        "sw": "Majibu yasiyo sahihi mara nyingi: usajili umesitishwa. Tuma REG kuanza upya.",
        "fr": "Trop de réponses erronées : inscription annulée. Envoyez REG pour recommencer.",
    },
    "reg_pending": {
        "en": "Your wallet is still being opened. If no welcome SMS comes, send PIN <PIN> "
        "to finish, REG to start over or STOP to cancel.",
        "sw": "Pochi yako bado inafunguliwa. Usipopata SMS ya karibu, tuma PIN <PIN> "
        "kumaliza, REG kuanza upya au STOP kusitisha.",
        "fr": "Votre portefeuille est en cours d'ouverture. Sans SMS de bienvenue, envoyez "
        "PIN <PIN> pour terminer, REG pour recommencer ou STOP pour annuler.",
    },
    "reg_stopped": {
        "en": "Registration cancelled. Nothing was saved. Send REG to start again.",
        "sw": "Usajili umesitishwa. Hakuna kilichohifadhiwa. Tuma REG kuanza upya.",
        "fr": "Inscription annulée. Rien n'a été enregistré. Envoyez REG pour recommencer.",
    },
    "send_superseded": {
        "en": "A newer transfer is waiting for your YES. This one was not kept: nothing was sent.",
        "sw": "Muamala mpya zaidi unasubiri YES yako. Huu haukuhifadhiwa: hakuna kilichotumwa.",
        "fr": "Un transfert plus récent attend votre YES. Celui-ci n'est pas gardé : rien n'a "
        "été envoyé.",
    },
    "send_stopped": {
        "en": "The transfer is cancelled. Nothing was sent.",
        "sw": "Muamala umesitishwa. Hakuna kilichotumwa.",
        "fr": "Le transfert est annulé. Rien n'a été envoyé.",
    },
    "nothing_to_stop": {
        "en": "There is nothing to cancel. Send HELP for the commands.",
        "sw": "Hakuna cha kusitisha. Tuma HELP kuona amri.",
        "fr": "Il n'y a rien à annuler. Envoyez HELP pour les commandes.",
    },
    # The core's refusals, by error_code.
    "error_WRONG_PIN": {
        "en": "Wrong PIN. {attempts_left} attempts left before your wallet is locked.",
        "sw": "PIN si sahihi. Majaribio {attempts_left} yamebaki kabla pochi kufungwa.",
        "fr": "PIN incorrect. Encore {attempts_left} essais avant le blocage du portefeuille.",
    },
    "error_WALLET_LOCKED": {
        "en": "Your wallet is locked after too many wrong PINs. Please call customer care.",
        "sw": "Pochi yako imefungwa baada ya PIN zisizo sahihi mara nyingi. Piga huduma kwa "
        "wateja.",
        "fr": "Votre portefeuille est bloqué après trop de PIN erronés. Appelez le service client.",
    },
    "error_ACCOUNT_CLOSED": {
        "en": "Your account is closed.",
        "sw": "Akaunti yako imefungwa.",
        "fr": "Votre compte est fermé.",
    },
    "error_INSUFFICIENT_FUNDS": {
        "en": "Not enough money in your wallet.",
        "sw": "Huna pesa za kutosha kwenye pochi.",
        "fr": "Solde insuffisant.",
    },
    "error_LIMIT_EXCEEDED": {
        "en": "This is above your transaction limit.",
        "sw": "Kiasi hiki kinazidi kikomo chako cha muamala.",
        "fr": "Ce montant dépasse votre plafond.",
    },
    "error_CUSTOMER_NOT_FOUND": {
        "en": "{recipient} is not registered for mobile money.",
        "sw": "{recipient} hajasajiliwa kwa pesa za simu.",
        "fr": "{recipient} n'est pas inscrit au mobile money.",
    },
    "error_SAME_ACCOUNT": {
        "en": "You cannot send money to yourself.",
        "sw": "Huwezi kujitumia pesa.",
        "fr": "Vous ne pouvez pas vous envoyer de l'argent.",
    },
    "error_WEAK_PIN": {
        "en": "Choose a PIN of 4 digits, not a sequence like 1234 and not one digit repeated.",
        "sw": "Chagua PIN ya tarakimu 4, si mfuatano kama 1234 wala tarakimu moja inayojirudia.",
        "fr": "Choisissez un PIN de 4 chiffres, ni une suite comme 1234 ni un chiffre répété.",
    },
    "error_LOAN_OUTSTANDING": {
        "en": "You already have a loan. Send LOAN STATUS <PIN> to see what is due.",
        "sw": "Tayari una mkopo. Tuma LOAN STATUS <PIN> kuona deni.",
        "fr": "Vous avez déjà un crédit. Envoyez LOAN STATUS <PIN> pour voir le montant à payer.",
    },
    "error_NOT_ELIGIBLE": {
        "en": "Loan not possible: {reason}",
        "sw": "Mkopo haiwezekani: {reason}",
        "fr": "Crédit impossible : {reason}",
    },
    "error_OVERPAYMENT": {
        "en": "That is more than your loan. You owe {owed}.",
        "sw": "Kiasi hicho kinazidi mkopo wako. Unadaiwa {owed}.",
        "fr": "C'est plus que votre crédit. Vous devez {owed}.",
    },
    "error_NO_OPEN_LOAN": {
        "en": "You have no loan to repay.",
        "sw": "Huna mkopo wa kulipa.",
        "fr": "Vous n'avez aucun crédit à rembourser.",
    },
    "error_ALREADY_EXISTS": {
        "en": "This number or ID is already registered.",
        "sw": "Nambari hii au kitambulisho hiki kimeshasajiliwa.",
        "fr": "Ce numéro ou cette pièce d'identité est déjà inscrit.",
    },
    "error_VALIDATION_ERROR": {
        "en": "Not accepted: {message}",
        "sw": "Haikubaliwi: {message}",
        "fr": "Refusé : {message}",
    },
    "error_default": {
        "en": "Sorry, that could not be done ({code}).",
        "sw": "Samahani, hilo halikuwezekana ({code}).",
        "fr": "Désolé, l'opération n'a pas abouti ({code}).",
    },
}

# The grammar's hints: the problem (`commands.Malformed.problem`), then the command's form.
_TEXTS.update(
    {
        "hint_malformed": {
            "en": "{problem} Use: {usage}. Send HELP for all commands.",
            "sw": "{problem} Tumia: {usage}. Tuma HELP kuona amri zote.",
            "fr": "{problem} Utilisez : {usage}. Envoyez HELP pour toutes les commandes.",
        },
        "hint_unknown": {
            "en": "Sorry, we did not understand that. Send HELP for the list of commands.",
            "sw": "Samahani, hatukuelewa ujumbe huo. Tuma HELP kuona orodha ya amri.",
            "fr": "Désolé, nous n'avons pas compris. Envoyez HELP pour la liste des commandes.",
        },
        "hint_too_long": {
            "en": "{problem} Send HELP for the list of commands.",
            "sw": "{problem} Tuma HELP kuona orodha ya amri.",
            "fr": "{problem} Envoyez HELP pour la liste des commandes.",
        },
    }
)
HINT_PROBLEMS: dict[str, dict[str, str]] = {
    "arguments": {
        "en": "Wrong number of words.",
        "sw": "Idadi ya maneno si sahihi.",
        "fr": "Nombre de mots incorrect.",
    },
    "pin": {
        "en": "The PIN must be 4 digits.",
        "sw": "PIN iwe tarakimu 4.",
        "fr": "Le PIN doit avoir 4 chiffres.",
    },
    "phone": {
        "en": "The phone number is not valid.",
        "sw": "Nambari ya simu si sahihi.",
        "fr": "Le numéro de téléphone n'est pas valide.",
    },
    "amount": {
        "en": "The amount must be a number like 500 or 12.50.",
        "sw": "Kiasi kiwe nambari kama 500 au 12.50.",
        "fr": "Le montant est un nombre comme 500 ou 12.50.",
    },
    "zero_amount": {
        "en": "The amount must be more than 0.",
        "sw": "Kiasi kiwe zaidi ya 0.",
        "fr": "Le montant doit dépasser 0.",
    },
    "name": {
        "en": "Names must be letters.",
        "sw": "Majina yawe herufi tu.",
        "fr": "Les noms sont en lettres seulement.",
    },
    "national_id": {
        "en": "The ID number must be 4 to 20 letters or digits.",
        "sw": "Kitambulisho kiwe herufi au tarakimu 4 hadi 20.",
        "fr": "Le numéro d'identité a 4 à 20 lettres ou chiffres.",
    },
    "language": {
        "en": "The language must be EN, SW or FR.",
        "sw": "Lugha iwe EN, SW au FR.",
        "fr": "La langue est EN, SW ou FR.",
    },
    "code": {
        "en": "The code must be 4 to 8 letters or digits.",
        "sw": "Msimbo uwe herufi au tarakimu 4 hadi 8.",
        "fr": "Le code a 4 à 8 lettres ou chiffres.",
    },
    "product": {
        "en": "The product code must be 2 to 32 letters or digits.",
        "sw": "Msimbo wa mkopo uwe herufi au tarakimu 2 hadi 32.",
        "fr": "Le code du produit a 2 à 32 lettres ou chiffres.",
    },
    "same_pin": {
        "en": "The new PIN must differ from the old one.",
        "sw": "PIN mpya isiwe sawa na ya zamani.",
        "fr": "Le nouveau PIN doit différer de l'ancien.",
    },
    "too_long": {
        "en": "The message is too long.",
        "sw": "Ujumbe ni mrefu mno.",
        "fr": "Le message est trop long.",
    },
}
# How each command is written: the keywords as the parser reads them, the rest translated.
HINT_USAGE: dict[str, dict[str, str]] = {
    "HELP": {"en": "HELP"},
    "REG": {
        "en": "REG <first name> <last name> <ID number> <PIN>",
        "sw": "REG <jina> <jina la ukoo> <kitambulisho> <PIN>",
        "fr": "REG <prénom> <nom> <numéro d'identité> <PIN>",
    },
    "BAL": {"en": "BAL <PIN>"},
    "SEND": {
        "en": "SEND <phone> <amount> <PIN>",
        "sw": "SEND <simu> <kiasi> <PIN>",
        "fr": "SEND <téléphone> <montant> <PIN>",
    },
    "MINI": {"en": "MINI <PIN>"},
    "PIN": {
        "en": "PIN <old PIN> <new PIN>",
        "sw": "PIN <PIN ya zamani> <PIN mpya>",
        "fr": "PIN <ancien PIN> <nouveau PIN>",
    },
    "LANG": {
        "en": "LANG <EN or SW or FR>",
        "sw": "LANG <EN au SW au FR>",
        "fr": "LANG <EN ou SW ou FR>",
    },
    "LOAN": {
        "en": "LOAN [<product>] <amount> <PIN> or LOAN STATUS <PIN>",
        "sw": "LOAN [<msimbo>] <kiasi> <PIN> au LOAN STATUS <PIN>",
        "fr": "LOAN [<produit>] <montant> <PIN> ou LOAN STATUS <PIN>",
    },
    "REPAY": {
        "en": "REPAY <amount> <PIN>",
        "sw": "REPAY <kiasi> <PIN>",
        "fr": "REPAY <montant> <PIN>",
    },
    "YES": {"en": "YES <code>", "sw": "YES <msimbo>", "fr": "YES <code>"},
}


TEXTS: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {key: MappingProxyType(by_language) for key, by_language in _TEXTS.items()}
)


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def text(key: str, language: str, **values: Any) -> str:
    """The reply `key` in `language` (English when missing), placeholders filled."""
    by_language = TEXTS[key]
    template = by_language.get(language) or by_language["en"]
    return template.format_map(_Blank(values)).strip()


# The core's own checks (a recipient `normalise_msisdn` refuses, an amount with more decimals
# than the currency has, a name) say what is wrong in English, and English replies keep that
# (it is the more precise); in other languages the field they name (`details["field"]`) gives
# the grammar's problem line.
VALIDATION_PROBLEMS = {
    "amount": "amount",
    "phone": "phone",
    "first_name": "name",
    "last_name": "name",
    "national_id": "national_id",
    "pin": "pin",
    "language": "language",
}


def error_text(error_code: str, language: str, **values: Any) -> str:
    """The refusal `error_code` in `language`; `values` fill its placeholders. A
    VALIDATION_ERROR in another language than English says what is wrong by its `field`
    (the core's English `message` is given in English only)."""
    key = f"error_{error_code}"
    if error_code == "VALIDATION_ERROR" and language != "en":
        problem = VALIDATION_PROBLEMS.get(str(values.get("field")))
        if problem is not None:
            values = {**values, "message": _in(HINT_PROBLEMS[problem], language)}
        else:
            key = "error_default"
    if key not in TEXTS:
        key = "error_default"
    return text(key, language, **{**values, "code": error_code})


def _in(by_language: dict[str, str], language: str) -> str:
    return by_language.get(language) or by_language["en"]


def hint_text(keyword: str | None, problem: str, language: str) -> str:
    """The one-line hint for text the grammar refused: `keyword` and `problem` of a
    `commands.Malformed`, or keyword None for a `commands.Unknown` (problem "unknown" or
    "too_long")."""
    if keyword is None:
        if problem == "unknown":
            return text("hint_unknown", language)
        return text("hint_too_long", language, problem=_in(HINT_PROBLEMS[problem], language))
    return text(
        "hint_malformed",
        language,
        problem=_in(HINT_PROBLEMS[problem], language),
        usage=_in(HINT_USAGE[keyword], language),
    )
